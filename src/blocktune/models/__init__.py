"""The pretrained model and its layers: building a timm or packaged model with a new head
(:mod:`.build`, :mod:`.packaged`), the layer walk in execution order (:mod:`.layers`), the
grouping strategies (:mod:`.groups`), and the frozen-norm folding and fast frozen layers
(:mod:`.fold`, :mod:`.fastlayers`)."""
