"""Scale-out adapters: ferropool's executor API on cluster engines.

- :mod:`.remote`: what every adapter shares (``RemotePool``, the worker-side ``run_task``);
- :mod:`.dask`: ``DaskPool`` on Dask distributed (needs ``ferropool[dask]``);
- :mod:`.ray`: ``RayPool`` on Ray (needs ``ferropool[ray]``).

This file imports nothing, so that importing one adapter does not need the other's engine.
"""
