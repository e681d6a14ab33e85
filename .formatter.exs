[
  inputs: ["{mix,.formatter}.exs", "mix_build/*.ex", "{lib,test}/**/*.{ex,exs}", "demo/*.exs"],
  line_length: 100
]
