"""Command-line flags the web UI parses before it loads extensions."""


def preload(parser):
    parser.add_argument(
        "--deforum-wan-api",
        action="store_true",
        help="Enable the Deforum Wan txt2vid API routes (also on with --api)",
    )
