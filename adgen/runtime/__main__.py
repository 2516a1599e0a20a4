"""`python -m adgen.runtime up|down|status`: the runtime commands without importing the whole CLI.

`adgen up` loads every command module (torch included) before it starts anything; this entry point
loads only the runtime, so the servers answer within a second or two of the command starting.
"""

from adgen.commands.runtime import app

if __name__ == "__main__":
    app()
