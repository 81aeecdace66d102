"""``python -m clipindex`` runs the clipindex CLI."""

from clipindex.cli.commands import main

if __name__ == "__main__":
    main()
