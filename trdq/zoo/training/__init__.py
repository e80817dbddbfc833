"""Training stages of the embedded zoo (`trdq zoo train`): data, VAE, DiTs, evaluation."""
