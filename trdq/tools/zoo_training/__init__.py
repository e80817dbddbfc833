"""Training stages of the embedded zoo (`trdq zoo train`): data, VAE, DiTs, evaluation."""

#: the stages of `trdq zoo train`, in the order they run (the default `--stages`)
STAGES = ("vae", "decoder", "t2i", "t2v")
