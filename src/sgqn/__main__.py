"""`python -m sgqn …` is the `sgqn` command."""

from sgqn.app.cli import main

if __name__ == "__main__":
    main()
