"""The Spotlight Data Engine: COCO instances -> Spotlight images -> a teacher's descriptions -> ShareGPT."""
