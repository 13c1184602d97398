"""Registration: affine and diffeomorphic instance optimisation on the images' own grids."""
