"""whetstone plan: what each fine-tuning method will cost before you run it (see docs/plan.md)."""
