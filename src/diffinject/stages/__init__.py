"""One thin module per DVC stage: parse params, call the library, write outputs and metrics."""
