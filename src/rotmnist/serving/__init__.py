"""The champion for users: the HTTP service of `rotmnist serve` and its request handling; no training code."""
