"""Code that runs inside each rank. Reads RUN_DIR/config.yaml; never imports Hydra."""
