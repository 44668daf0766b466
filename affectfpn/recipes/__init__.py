"""Training recipes: datasets, the trainer and the paper's teacher-student pipeline."""
