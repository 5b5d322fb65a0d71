"""molgym.envs: Gymnasium environments that build molecules atom by atom in 3D."""
