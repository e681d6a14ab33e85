# Array throughput: an 8 MiB float64 numpy array reaching an Elixir binary.
#
#   mix run bench/arrays.exs                 # ARRAY_ROUNDS=30 by default
#
# Needs numpy in .venv (make setup installs it). Two ways, same array:
#   tensor   the ndarray returned as is: %SnakeBridge.Tensor{} (one copy of
#            its memory into the reply frame, one into the binary)
#   tobytes  arr.tobytes() returned as bytes (the way without tensors)
# Each prints the median and best time per array and the GB/s of the median.
# The target is >= 2 GB/s for the tensor row on the development
# machine; a wrong value fails the run instead of being timed.

rounds = String.to_integer(System.get_env("ARRAY_ROUNDS", "30"))
python = Path.expand(".venv/bin/python")
File.exists?(python) || raise "#{python} is missing: run make setup"

{:ok, _} = SnakeBridge.Pool.start_link(name: :arrays, size: 1, python: python)

# numpy is imported once, outside the timings.
{:ok, nil} = SnakeBridge.eval("import numpy\nNone", %{}, pool: :arrays)
expected = for i <- 0..(1024 * 1024 - 1), into: <<>>, do: <<i * 1.0::float-64-little>>

ways = [
  {"tensor",
   fn ->
     {:ok, %SnakeBridge.Tensor{data: data}} =
       SnakeBridge.call(
         "builtins",
         "eval",
         ["__import__('numpy').arange(1048576, dtype='float64')"],
         pool: :arrays,
         timeout: 30_000
       )

     data
   end},
  {"tobytes",
   fn ->
     {:ok, data} =
       SnakeBridge.call(
         "builtins",
         "eval",
         ["__import__('numpy').arange(1048576, dtype='float64').tobytes()"],
         pool: :arrays,
         timeout: 30_000
       )

     data
   end}
]

IO.puts(
  "8 MiB float64 array -> Elixir binary, #{rounds} rounds (includes making the array in Python)"
)

IO.puts(
  "target: tensor >= 2 GB/s (and, in bench/run.exs, a 4 MiB echo <= 2.8 ms: Pythonx in-process)"
)

for {label, fun} <- ways do
  fun.() == expected || raise "#{label}: wrong data"

  times =
    for _ <- 1..rounds do
      {us, _} = :timer.tc(fun)
      us
    end
    |> Enum.sort()

  median = Enum.at(times, div(length(times), 2))
  gbps = byte_size(expected) / (median / 1_000_000) / 1.0e9

  IO.puts(
    String.pad_trailing(label, 8) <>
      " median #{Float.round(median / 1000, 2)} ms, best #{Float.round(hd(times) / 1000, 2)} ms, " <>
      "#{Float.round(gbps, 2)} GB/s"
  )
end
