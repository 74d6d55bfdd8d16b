from affinage.cli import main

main()
