"""semimed: reproducible semi-supervised medical image learning."""
