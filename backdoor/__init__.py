"""Fine-tuning vs. backdoor attacks: reproduction of "Fine-Tuning Is All You Need to Mitigate Backdoor Attacks"."""
