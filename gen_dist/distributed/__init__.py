"""Everything that knows about processes: the launcher's settings (launch_env.py), the engine (DDP or
DeepSpeed, engine.py and deepspeed.py), collectives for metrics (collectives.py), preemption signals
and process teardown."""
