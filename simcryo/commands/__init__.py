"""One module per `simcryo` command, each exposing `add_arguments(parser)` and `main(args)`."""
