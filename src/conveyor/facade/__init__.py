"""The sides of the `Conveyor` app facade (see `conveyor.app`), one module each."""
