"""Quality: tasks that need no download, equal-budget training, and lm-eval evaluation."""
