"""Fine-tuning helpers: merging a trained LoRA adapter into its base model for serving."""
