"""One module per ``fetalhead`` subcommand: its flags, generated from the settings dataclasses, then one library call."""
