# SnakeBridge benchmark: SnakeBridge against a hand-rolled Port + msgpack baseline,
# interleaved in one run. See bench/README.md.
#
#   mix run bench/run.exs                          # both systems
#   BENCH_ONLY=baseline mix run bench/run.exs      # baseline alone (also: elixir bench/run.exs)
#   BENCH_ONLY=remote mix run bench/run.exs        # the remote scenario alone
#
# The remote scenario (after the others, unless BENCH_REMOTE=0) calls a
# clustered pool on a peer node on loopback: :erpc.call of SnakeBridge.call
# per call against the clustered pool, with the bare distribution round trip
# alongside (see SnakeBridgeBench.Systems.remote/1).
#
# Environment: BENCH_ONLY (baseline | snakebridge | remote), BENCH_REMOTE, BENCH_WORKERS (default
# System.schedulers_online()), BENCH_ROUNDS (10), BENCH_SECONDS (per throughput
# chunk, 1.0), BENCH_LATENCY_CALLS (per latency chunk, 2000), BENCH_BIG_CALLS
# (4 MiB calls per chunk, 20), BENCH_CALLERS (64), BENCH_LOAD (busy-loop
# processes in the background, 0), BENCH_PYTHON (interpreter for both
# systems), BENCH_VERBOSE=1,
# BENCH_AA=1 (control run: the baseline against a second, identical baseline
# instead of SnakeBridge, to see how large the noise on this machine is).

bench_dir = __DIR__
root = Path.expand("..", bench_dir)

for file <- ~w(msgpack.ex port_worker.ex systems.ex cpu.ex harness.ex) do
  Code.require_file(file, bench_dir)
end

alias SnakeBridgeBench.{Cpu, Harness, Systems}

# Workers' debug lines ("started ...") would break up the table; warnings still show.
unless System.get_env("BENCH_VERBOSE") in ["1", "true"], do: Logger.configure(level: :info)

config = %{
  workers: Harness.env_int("BENCH_WORKERS", System.schedulers_online()),
  rounds: Harness.env_int("BENCH_ROUNDS", 10),
  seconds: Harness.env_float("BENCH_SECONDS", 1.0),
  latency_calls: Harness.env_int("BENCH_LATENCY_CALLS", 2_000),
  big_calls: Harness.env_int("BENCH_BIG_CALLS", 20),
  callers: Harness.env_int("BENCH_CALLERS", 64),
  stream_items: Harness.env_int("BENCH_STREAM_ITEMS", 20_000),
  stream_blobs: Harness.env_int("BENCH_STREAM_BLOBS", 200),
  load: Harness.env_int("BENCH_LOAD", 0),
  cpu: Cpu.available?(),
  verbose: System.get_env("BENCH_VERBOSE") in ["1", "true"]
}

only = System.get_env("BENCH_ONLY")
aa? = System.get_env("BENCH_AA") in ["1", "true"]

unless only in [nil, "", "baseline", "snakebridge", "remote"] do
  raise ArgumentError, "BENCH_ONLY must be baseline, snakebridge or remote, got: #{inspect(only)}"
end

# One interpreter for both systems. The baseline needs the PyPI msgpack package,
# so the project venv (.venv, which has it) wins over SNAKEBRIDGE_PYTHON / python3.
venv_python = Path.join(root, ".venv/bin/python")

python =
  System.get_env("BENCH_PYTHON") ||
    if(File.exists?(venv_python), do: venv_python) ||
    System.get_env("SNAKEBRIDGE_PYTHON") ||
    System.find_executable("python3") ||
    raise("no python3 found; set BENCH_PYTHON")

case System.cmd(python, ["-c", "import msgpack"], stderr_to_stdout: true) do
  {_, 0} ->
    :ok

  {out, _} ->
    IO.puts(:stderr, """
    #{python} cannot import msgpack, which the baseline worker needs:
    #{out}
    Create the venv:  python3 -m venv #{Path.join(root, ".venv")} && #{venv_python} -m pip install msgpack
    """)

    System.halt(1)
end

py_dir = Path.join(bench_dir, "py")
start_opts = [size: config.workers, python: python, python_path: [py_dir]]

# Background load: busy loops in their own OS processes, competing with both
# systems for the cores, for the duration of `run`. Each `sh` runs the loop in
# the background and waits for EOF on stdin, which comes when the port closes
# or the BEAM dies, so no loop outlives the run.
with_load = fn run ->
  busy_loops =
    for _ <- List.duplicate(nil, config.load) do
      Port.open({:spawn_executable, "/bin/sh"},
        args: ["-c", "while :; do :; done & read _; kill $!"]
      )
    end

  try do
    run.()
  after
    Enum.each(busy_loops, &Port.close/1)
  end
end

load_line =
  if config.load == 0,
    do: "idle: no background load (BENCH_LOAD=0)",
    else: "loaded: #{config.load} busy-loop processes in the background (BENCH_LOAD=#{config.load})"

remote_bench = fn ->
  {remote_systems, stop} = Systems.remote(start_opts)

  remote_scenarios = [
    %{
      id: :remote_latency,
      kind: :latency,
      label: "remote latency operator.add(1, 2), 1 caller",
      mfa: {"operator", "add", [1, 2]},
      expected: 3
    },
    %{
      id: :remote_trivial,
      kind: :throughput,
      label: "remote, #{config.callers} callers, operator.add(1, 2)",
      mfa: {"operator", "add", [1, 2]},
      expected: 3
    }
  ]

  for system <- remote_systems, scenario <- remote_scenarios do
    with {:error, got} <- Harness.check(system, scenario),
         do: raise("#{system.name} gave a wrong result in #{scenario.id}: #{inspect(got)}")
  end

  IO.puts(
    "\nRemote scenario: a clustered pool of #{config.workers} workers on a peer node on loopback; #{load_line}\n"
  )

  remote_results = with_load.(fn -> Harness.run(remote_systems, remote_scenarios, config) end)
  Harness.report(remote_results, remote_systems, remote_scenarios)
  stop.()
end

if only == "remote" do
  remote_bench.()
  System.halt(0)
end

baseline =
  if only != "snakebridge" do
    {:ok, system} =
      Systems.baseline([script: Path.join(bench_dir, "baseline_worker.py")] ++ start_opts)

    system
  end

snakebridge =
  cond do
    only == "baseline" ->
      nil

    aa? ->
      {:ok, system} =
        Systems.baseline(
          [name: "baseline_b", script: Path.join(bench_dir, "baseline_worker.py")] ++ start_opts
        )

      system

    true ->
      case Systems.snakebridge(start_opts) do
        {:ok, system} ->
          system

        {:error, why} ->
          IO.puts(:stderr, "SnakeBridge is not available, running the baseline alone: #{why}")
          nil
      end
  end

# Payloads: a map of 100 string keys to floats, and 64 KiB of random bytes that
# are not valid UTF-8 (so both sides send and receive `bytes`, never `str`).
:rand.seed(:exsss, {1, 2, 3})

map100 =
  Map.new(1..100, fn i ->
    {"key_#{String.pad_leading(Integer.to_string(i), 3, "0")}", :rand.uniform() * 1000}
  end)

<<_, random::binary>> = :crypto.strong_rand_bytes(64 * 1024)
bytes64k = <<0xFF, random::binary>>
false = String.valid?(bytes64k)
bytes4m = :binary.copy(bytes64k, 64)

callers = config.callers
mib = 1_048_576
blob = :binary.copy(<<0xFF>>, mib)
blob8m = :binary.copy(blob, 8)

scenarios = [
  %{
    id: :latency,
    kind: :latency,
    label: "latency operator.add(1, 2), 1 caller",
    mfa: {"operator", "add", [1, 2]},
    expected: 3,
    cpu: true
  },
  %{
    id: :bytes4m,
    kind: :latency,
    label: "latency identity(4 MiB bytes), 1 caller",
    mfa: {"bench_funcs", "identity", [bytes4m]},
    expected: bytes4m,
    calls: config.big_calls,
    # A p99 of 20 calls would be their maximum.
    percentiles: [:p50]
  },
  %{
    id: :blob8m,
    kind: :latency,
    label: "latency blob(8 MiB) result, 1 caller",
    mfa: {"bench_funcs", "blob", [8 * mib]},
    expected: blob8m,
    calls: config.big_calls,
    percentiles: [:p50]
  },
  %{
    id: :trivial,
    kind: :throughput,
    label: "#{callers} callers, operator.add(1, 2)",
    mfa: {"operator", "add", [1, 2]},
    expected: 3,
    cpu: true
  },
  %{
    id: :map100,
    kind: :throughput,
    label: "#{callers} callers, identity(100-key str->float map)",
    mfa: {"bench_funcs", "identity", [map100]},
    expected: map100
  },
  %{
    id: :bytes64k,
    kind: :throughput,
    label: "#{callers} callers, identity(64 KiB bytes)",
    mfa: {"bench_funcs", "identity", [bytes64k]},
    expected: bytes64k
  },
  %{
    id: :stream_small,
    kind: :items,
    label: "1 consumer, #{config.stream_items} small items (ints)",
    count: config.stream_items,
    stream: {"bench_funcs", "items", [config.stream_items]},
    per_item: fn i -> {"bench_funcs", "identity", [i]} end,
    item: fn i -> i end
  },
  %{
    id: :stream_blobs,
    kind: :items,
    label: "1 consumer, #{config.stream_blobs} items of 1 MiB",
    count: config.stream_blobs,
    stream: {"bench_funcs", "blobs", [config.stream_blobs, mib]},
    per_item: fn _ -> {"bench_funcs", "blob", [mib]} end,
    item: fn _ -> blob end
  }
]

# Smoke check: every scenario must return the right value once before timing.
check = fn system ->
  Enum.find_value(scenarios, :ok, fn scenario ->
    case Harness.check(system, scenario) do
      :ok -> nil
      {:error, got} -> {:error, scenario.id, got}
    end
  end)
end

baseline =
  baseline &&
    case check.(baseline) do
      :ok ->
        baseline

      {:error, id, got} ->
        raise "the baseline gave a wrong result in #{id}: #{inspect(got, limit: 10)}"
    end

snakebridge =
  snakebridge &&
    case check.(snakebridge) do
      :ok ->
        snakebridge

      {:error, id, got} ->
        IO.puts(
          :stderr,
          "SnakeBridge gave a wrong result in #{id}, running the baseline alone: #{inspect(got, limit: 10)}"
        )

        nil
    end

systems = Enum.reject([baseline, snakebridge], &is_nil/1)
if systems == [], do: raise("nothing to benchmark")

{:ok, loadavg} = File.read("/proc/loadavg")

cpu_line =
  if config.cpu,
    do:
      "CPU per call: run time from /proc/*/task/*/schedstat around each chunk, per completed call",
    else: "CPU per call: not measured (no /proc/self/schedstat)"

IO.puts("""
SnakeBridge benchmark: #{Enum.map_join(systems, " vs ", & &1.name)}
  Elixir #{System.version()} / OTP #{System.otp_release()}, #{System.schedulers_online()} schedulers online
  python #{python}, #{config.workers} workers per system
  #{load_line}; load average before the run: #{loadavg |> String.split() |> Enum.take(3) |> Enum.join(" ")}
  #{config.rounds} rounds; per round and system: #{config.latency_calls} latency calls, \
#{config.big_calls} calls of 4 MiB, #{config.seconds} s per throughput scenario
  cells: median over rounds [min-max]; #{cpu_line}
""")

started = System.monotonic_time(:millisecond)
results = with_load.(fn -> Harness.run(systems, scenarios, config) end)
Harness.report(results, systems, scenarios)

IO.puts(
  "\n#{config.rounds} rounds in #{div(System.monotonic_time(:millisecond) - started, 1000)} s"
)

if only in [nil, ""] and System.get_env("BENCH_REMOTE") not in ["0", "false"], do: remote_bench.()
