"""Pure boot choices: which loader a client architecture gets, and (later) the scripts it runs."""
