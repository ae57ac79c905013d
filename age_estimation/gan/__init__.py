"""Synthetic faces: an age-conditional GAN the toolkit trains itself (models, training), external
TorchScript generators (external), and quality measures that need no downloaded network."""
