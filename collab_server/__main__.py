from collab_server.cli import main

main()
