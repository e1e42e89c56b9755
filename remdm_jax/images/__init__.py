"""Images (SPEC_DOMAINS §I): MaskGIT VQ-token generation with MaskGIT, MDLM and ReMDM decoding
(`decode.make_image_sampler`, `schedules`), the MaskGIT transformer and VQGAN decoder ports with the
official-checkpoint importer (`maskgit`, `vqgan`, `convert`), the ImageNet generation command
(`imagenet`), FID / IS (`fid`), and the offline sklearn-digits demonstration (`digits`,
`sample_digits`, `sweep`)."""
