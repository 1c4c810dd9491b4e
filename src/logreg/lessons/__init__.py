"""The lessons around the template: autograd by hand, and the three modes compared side by side."""
