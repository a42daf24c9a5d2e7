from bgpvip.cli import main

main()
