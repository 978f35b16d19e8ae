"""`srdeploy`: one thin typer command per entry point. Commands live in sr_deploy.commands.*."""

from __future__ import annotations

import sys

import typer
from typer.exceptions import TyperException

from sr_deploy.errors import SRDeployError


def build_app() -> typer.Typer:
    from sr_deploy.commands import bench, core, imaging, onnx, tensorrt, train

    app = typer.Typer(
        name="srdeploy",
        help="Efficient image super-resolution from training to TensorRT.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for module in (core, train, onnx, tensorrt, imaging, bench):
        module.register(app)
    return app


def main(argv: list[str] | None = None) -> int:
    """Entry point: user mistakes become one line on stderr and exit code 2, never a traceback."""
    app = build_app()
    try:
        result = app(args=argv, prog_name="srdeploy", standalone_mode=False)
    except SRDeployError as e:
        print(f"srdeploy: error: {e}", file=sys.stderr)
        return 2
    except typer.Abort:
        print("srdeploy: aborted", file=sys.stderr)
        return 130
    except TyperException as e:
        # Usage errors (bad flag value, missing argument): one line, naming the flag.
        print(f"srdeploy: error: {e.format_message()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("srdeploy: interrupted", file=sys.stderr)
        return 130
    code = result if isinstance(result, int) else 0
    return code


if __name__ == "__main__":
    sys.exit(main())
