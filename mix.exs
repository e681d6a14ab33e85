# The native compiler must exist before Mix compiles lib/, so it lives outside lib/.
Code.require_file("mix_build/compile.snakebridge_native.ex", __DIR__)
Code.require_file("mix_build/snakebridge.export_native.ex", __DIR__)

defmodule SnakeBridge.MixProject do
  use Mix.Project

  @version "0.1.0"

  def project do
    [
      app: :snakebridge,
      version: @version,
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      compilers: [:snakebridge_native] ++ Mix.compilers(),
      elixirc_paths: elixirc_paths(Mix.env()),
      deps: [],
      description: "Call Python from Elixir through a Rust NIF and Rust-managed Python workers",
      docs: [main: "SnakeBridge"],
      package: package()
    ]
  end

  # What the Hex package holds: the sources the native compiler builds from,
  # never build output (target/, _build/, priv/). `make package-check`
  # compiles a fresh project against exactly these files.
  defp package do
    [
      files:
        ~w(lib mix_build native python_worker/snakebridge_worker/*.{py,pyi} Cargo.toml Cargo.lock
                mix.exs .formatter.exs README.md LICENSE),
      licenses: ["Apache-2.0"],
      links: %{"Apache License 2.0" => "https://www.apache.org/licenses/LICENSE-2.0"}
    ]
  end

  def application do
    [
      extra_applications: [:logger],
      mod: {SnakeBridge.Application, []}
    ]
  end

  defp elixirc_paths(:test), do: ["lib", "test/support"]
  defp elixirc_paths(_), do: ["lib"]
end
