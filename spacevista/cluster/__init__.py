"""Where a run lives: resources and placement groups (`resources`), the local Ray head (`local_ray`), run
storage and checkpoint directories (`run_storage`), job submission (`submit`), Ray metrics (`metrics`), the
memory plan (`plan`, `plan_cli`) and deployment templates."""
