"""Using a trained model: prediction from a run folder."""
