"""Image-token generation: MaskGIT decoding, MDLM / ReMDM on class-conditional VQ-token sequences
(SPEC_DOMAINS §I), and the offline sklearn-digits demonstration. See `decode.make_image_sampler`."""
