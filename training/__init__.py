"""wanfly training: datasets (synthetic drone flights, Sekai conversion), action statistics and the trainer."""
