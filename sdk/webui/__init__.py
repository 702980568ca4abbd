"""`sdk web-ui`: a gradio page over the CLI. Training runs as the `sdk sft` command it shows, in
a subprocess; what the page shows of runs is read from their folders under --output-dir."""
