@echo off
rem Microsoft.ML.BootMae build script (Windows).
rem   build.cmd          restore and build the solution (Release)
rem   build.cmd test     run the whole test suite; ends with one line "N passed, N failed"
rem   build.cmd pack     create the NuGet package in artifacts\packages
rem Note: TorchSharp 0.107.0's native library does not load on Windows (TorchSharp issue 1567); Linux is the
rem supported platform until that is fixed. This script is kept so that Windows builds stay possible.
setlocal enabledelayedexpansion
cd /d "%~dp0"
set COMMAND=%1
if "%COMMAND%"=="" set COMMAND=build
set RUNTIME=cpu
if /i "%2"=="--cuda" set RUNTIME=cuda
set PROPS=-c Release -p:BootMaeTorchRuntime=%RUNTIME% -nologo

if /i "%COMMAND%"=="build" (
  dotnet restore Microsoft.ML.BootMae.sln -p:BootMaeTorchRuntime=%RUNTIME% -nologo || exit /b 1
  dotnet build Microsoft.ML.BootMae.sln --no-restore %PROPS% || exit /b 1
  exit /b 0
)
if /i "%COMMAND%"=="test" (
  if exist artifacts\TestResults rmdir /s /q artifacts\TestResults
  dotnet test Microsoft.ML.BootMae.sln %PROPS% --logger trx --results-directory artifacts\TestResults
  set STATUS=!ERRORLEVEL!
  powershell -NoProfile -Command "$p=0;$f=0;$t=0; Get-ChildItem artifacts\TestResults\*.trx | ForEach-Object { $c=([xml](Get-Content $_)).TestRun.ResultSummary.Counters; $t+=[int]$c.total; $p+=[int]$c.passed; $f+=[int]$c.failed+[int]$c.error+[int]$c.timeout+[int]$c.aborted }; Write-Output \"$p passed, $f failed\"; if ($t -eq 0 -or $f -gt 0) { exit 1 }"
  if errorlevel 1 exit /b 1
  exit /b !STATUS!
)
if /i "%COMMAND%"=="pack" (
  dotnet pack src\Microsoft.ML.BootMae\Microsoft.ML.BootMae.csproj %PROPS% -o artifacts\packages
  exit /b !ERRORLEVEL!
)
echo build.cmd: unknown command "%COMMAND%" (use build, test or pack)
exit /b 2
