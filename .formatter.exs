[
  inputs: [
    "{mix,.formatter}.exs",
    "mix_build/*.ex",
    "{lib,test}/**/*.{ex,exs}",
    "{demo,bench,soak}/*.{ex,exs}"
  ],
  line_length: 100
]
