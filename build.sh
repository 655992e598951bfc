#!/usr/bin/env bash
# NetStack's build entry point. Needs only the .NET SDK.
#
#   ./build.sh demo [args]   run the `netstack demo` (the main job)
#   ./build.sh test [args]   run the whole test suite (Expecto args pass through)
#   ./build.sh bench [args]  run the BenchmarkDotNet suite (e.g. --filter '*Checksum*')
#   ./build.sh build         restore and build the solution (Release)
#   ./build.sh format        format F# (Fantomas) and C# (dotnet format) in place
#   ./build.sh check-format  fail when formatting differs
#   ./build.sh paket ARGS    run Paket (install/update/...) and keep paket.lock free of registry URLs
#   ./build.sh netstack ARGS run the netstack command with ARGS
#   ./build.sh pack [DIR]    make the NuGet packages (NetStack.Core, NetStack.Api, NetStack.AspNetCore, the NetStack.Cli tool) in DIR (artifacts)
#
# Package source: Paket reads it from NETSTACK_NUGET_SOURCE. When that is unset, this script
# takes the first enabled source from the user's own NuGet configuration (`dotnet nuget list
# source`), so no registry address is ever written into the repository.
set -euo pipefail
cd "$(dirname "$0")"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

if [ -z "${NETSTACK_NUGET_SOURCE:-}" ]; then
  NETSTACK_NUGET_SOURCE=$(dotnet nuget list source --format short 2>/dev/null | awk '$1 ~ /^E/ {print $2; exit}')
  if [ -z "$NETSTACK_NUGET_SOURCE" ]; then
    echo "build.sh: no enabled NuGet source found (dotnet nuget list source); set NETSTACK_NUGET_SOURCE" >&2
    exit 1
  fi
  export NETSTACK_NUGET_SOURCE
fi

# Paket writes the expanded source into paket.lock; put the placeholder back.
keep_lock_placeholder() {
  sed -i -E 's|^(  remote: ).*$|\1%NETSTACK_NUGET_SOURCE%|' paket.lock
}

restore() {
  dotnet tool restore >/dev/null
  dotnet paket restore
  keep_lock_placeholder
}

# The C# projects checked by `dotnet format` (F# is Fantomas's). Roslyn's workspace cannot load
# F# projects, so it resolves NetStack.Core from its built assembly: build that first (the
# workspace uses the default Debug configuration).
CSHARP_PROJECTS="NetStack.Api/NetStack.Api.csproj NetStack.AspNetCore/NetStack.AspNetCore.csproj NetStack.Cli/NetStack.Cli.csproj examples/EchoAndHttp/EchoAndHttp.csproj examples/ForwardProxy/ForwardProxy.csproj examples/DnsHttpClient/DnsHttpClient.csproj"
build_core_for_format() {
  dotnet build NetStack.Core -v q -nologo >/dev/null
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  demo)
    restore
    dotnet build NetStack.Cli -c Release -v q -nologo
    exec dotnet NetStack.Cli/bin/Release/net10.0/netstack.dll demo "$@"
    ;;
  netstack)
    restore
    dotnet build NetStack.Cli -c Release -v q -nologo
    exec dotnet NetStack.Cli/bin/Release/net10.0/netstack.dll "$@"
    ;;
  test)
    restore
    dotnet build NetStack.sln -c Release -v q -nologo
    exec dotnet NetStack.Tests/bin/Release/net10.0/NetStack.Tests.dll "$@"
    ;;
  bench)
    restore
    dotnet build NetStack.Bench -c Release -v q -nologo
    exec dotnet NetStack.Bench/bin/Release/net10.0/NetStack.Bench.dll "$@"
    ;;
  build)
    restore
    dotnet build NetStack.sln -c Release -v q -nologo
    ;;
  format)
    restore
    dotnet fantomas .
    build_core_for_format
    for p in $CSHARP_PROJECTS; do dotnet format "$p" -v q; done
    ;;
  check-format)
    restore
    dotnet fantomas --check .
    build_core_for_format
    for p in $CSHARP_PROJECTS; do dotnet format "$p" --verify-no-changes -v q; done
    ;;
  pack)
    restore
    # NETSTACK_REPOSITORY_URL, when set, becomes the packages' <repository url> (type git).
    dotnet pack NetStack.sln -c Release -v q -nologo -o "${1:-artifacts}" \
      ${NETSTACK_REPOSITORY_URL:+"-p:RepositoryUrl=$NETSTACK_REPOSITORY_URL"}
    ;;
  paket)
    dotnet tool restore >/dev/null
    status=0
    dotnet paket "$@" || status=$?
    keep_lock_placeholder
    exit $status
    ;;
  *)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    [ -z "$cmd" ] && exit 0 || exit 2
    ;;
esac
