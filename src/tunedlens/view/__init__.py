"""Looking through a lens: prediction trajectories, token display, the notebook facade."""
