from covidseg.cli import console

console()
