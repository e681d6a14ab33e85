# Large payloads: SnakeBridge with shared memory, SnakeBridge over the socket
# alone (shared_memory: false) and the Port baseline, interleaved in one run.
#
#   mix run bench/large.exs
#
# Environment: LARGE_ROUNDS (10), LARGE_CALLS (calls per chunk, 20),
# LARGE_CALLERS (concurrent callers of the 64 KiB throughput chunk, 64),
# LARGE_SECONDS_MS (per throughput chunk, 500), LARGE_WORKERS (2),
# LARGE_VERBOSE=1 (print each chunk).
#
# Each round runs every scenario once per system, the systems in a rotating
# order. A chunk's figure is its median time per call (or its calls per
# second); the report gives the median over rounds, the minimum over rounds,
# and each system's ratio to the baseline and to the socket path.

bench_dir = __DIR__
root = Path.expand("..", bench_dir)

for file <- ~w(msgpack.ex port_worker.ex systems.ex cpu.ex harness.ex) do
  Code.require_file(file, bench_dir)
end

alias SnakeBridgeBench.{Harness, PortPool}

Logger.configure(level: :info)

rounds = Harness.env_int("LARGE_ROUNDS", 10)
calls = Harness.env_int("LARGE_CALLS", 20)
callers = Harness.env_int("LARGE_CALLERS", 64)
seconds = Harness.env_int("LARGE_SECONDS_MS", 500) / 1000
workers = Harness.env_int("LARGE_WORKERS", 2)
verbose = System.get_env("LARGE_VERBOSE") in ["1", "true"]
python = Path.join(root, ".venv/bin/python")
py_path = [Path.join(bench_dir, "py")]

{:ok, _} =
  PortPool.start_link(
    name: :large_baseline,
    size: workers,
    python: python,
    script: Path.join(bench_dir, "baseline_worker.py"),
    python_path: py_path
  )

for {name, shared} <- [large_shm: true, large_socket: false] do
  {:ok, _} =
    SnakeBridge.Pool.start_link(
      name: name,
      size: workers,
      python: python,
      python_path: py_path,
      shared_memory: shared
    )
end

snakebridge = fn pool ->
  fn m, f, a -> SnakeBridge.call(m, f, a, pool: pool, timeout: 30_000) end
end

systems = [
  {"baseline", fn m, f, a -> PortPool.call(:large_baseline, m, f, a, 30_000) end},
  {"socket", snakebridge.(:large_socket)},
  {"shm", snakebridge.(:large_shm)}
]

# Workers start in the background: wait until each answers.
for {_, call} <- systems, _ <- 1..workers do
  Stream.repeatedly(fn -> call.("operator", "add", [1, 2]) end)
  |> Enum.find(fn r -> match?({:ok, 3}, r) || (Process.sleep(100) && false) end)
end

# Not valid UTF-8, so both systems send them as bytes.
blob = fn size -> :binary.copy(<<255>>, size) end
mib4 = blob.(4 * 1024 * 1024)
kib64 = blob.(64 * 1024)
mib8 = 8 * 1024 * 1024

scenarios = [
  {"identity(4 MiB bytes), ms per call", :time, {"bench_funcs", "identity", [mib4]}, mib4},
  {"blob(8 MiB) reply, ms per call", :time, {"bench_funcs", "blob", [mib8]}, mib8},
  {"identity(64 KiB bytes), ms per call", :time, {"bench_funcs", "identity", [kib64]}, kib64},
  {"identity(64 KiB bytes), #{callers} callers, calls/s", :rate,
   {"bench_funcs", "identity", [kib64]}, kib64}
]

check = fn value, expected ->
  if is_integer(expected), do: byte_size(value) == expected, else: value == expected
end

median = fn values ->
  sorted = Enum.sort(values)
  n = length(sorted)

  if rem(n, 2) == 1,
    do: Enum.at(sorted, div(n, 2)),
    else: (Enum.at(sorted, div(n, 2) - 1) + Enum.at(sorted, div(n, 2))) / 2
end

chunk = fn
  call, :time, {m, f, a}, expected ->
    times =
      for _ <- 1..calls do
        {us, {:ok, value}} = :timer.tc(fn -> call.(m, f, a) end)
        true = check.(value, expected)
        us / 1000
      end

    median.(times)

  call, :rate, {m, f, a}, expected ->
    deadline = System.monotonic_time(:millisecond) + round(seconds * 1000)

    counts =
      1..callers
      |> Enum.map(fn _ ->
        Task.async(fn ->
          Stream.repeatedly(fn ->
            {:ok, value} = call.(m, f, a)
            true = check.(value, expected)
          end)
          |> Enum.reduce_while(0, fn _, n ->
            if System.monotonic_time(:millisecond) < deadline,
              do: {:cont, n + 1},
              else: {:halt, n + 1}
          end)
        end)
      end)
      |> Task.await_many(60_000)

    Enum.sum(counts) / seconds
end

results =
  for round <- 1..rounds, {label, kind, mfa, expected} <- scenarios, reduce: %{} do
    acc ->
      n = length(systems)
      order = Enum.map(0..(n - 1), &Enum.at(systems, rem(&1 + round, n)))

      Enum.reduce(order, acc, fn {name, call}, acc ->
        value = chunk.(call, kind, mfa, expected)
        if verbose, do: IO.puts("#{round} #{label} #{name}: #{value}")
        :erlang.garbage_collect()
        Map.update(acc, {label, name}, [value], &[value | &1])
      end)
  end

{_, load1, _} = {:ok, File.read!("/proc/loadavg") |> String.split() |> hd(), nil}

IO.puts(
  "rounds #{rounds}, #{calls} calls per time chunk, #{workers} workers per system, load average #{load1}"
)

fmt = fn v -> :erlang.float_to_binary(v / 1, decimals: if(v >= 100, do: 0, else: 2)) end

for {label, kind, _, _} <- scenarios do
  IO.puts("\n#{label}")

  figures =
    for {name, _} <- systems, into: %{} do
      values = results[{label, name}]
      best = if kind == :time, do: Enum.min(values), else: Enum.max(values)
      {name, {median.(values), best}}
    end

  for {name, _} <- systems do
    {med, best} = figures[name]
    {base, _} = figures["baseline"]
    {sock, _} = figures["socket"]

    IO.puts(
      "  #{String.pad_trailing(name, 9)} median #{String.pad_leading(fmt.(med), 9)}  best #{String.pad_leading(fmt.(best), 9)}" <>
        "  /baseline #{fmt.(med / base)}x  /socket #{fmt.(med / sock)}x"
    )
  end
end

{med8, best8} =
  {median.(results[{"blob(8 MiB) reply, ms per call", "shm"}]),
   Enum.min(results[{"blob(8 MiB) reply, ms per call", "shm"}])}

IO.puts(
  "\nshm 8 MiB reply: #{fmt.(mib8 / (med8 / 1000) / 1.0e9)} GB/s median, #{fmt.(mib8 / (best8 / 1000) / 1.0e9)} GB/s best"
)
