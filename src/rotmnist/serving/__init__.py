"""The champion for users: `rotmnist predict` and the HTTP service of `rotmnist serve`; no training code."""
