"""Applications of the geometric core: sparsification, continual learning, mode connectivity."""
