"""Images: MaskGIT VQ-token generation with MaskGIT, MDLM and ReMDM decoding (SPEC_DOMAINS §I)."""
