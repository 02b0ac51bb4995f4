"""Command line of darknet2tflite: argparse front-ends; `convert` and `serve` start the Prefect flows."""
