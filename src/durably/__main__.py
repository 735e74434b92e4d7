from durably._cli import main

main()
