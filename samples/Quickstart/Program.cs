using BootMae.Samples;
using BootMae.Samples.Quickstart;

var commandLine = new QuickstartCommandLine();
return SampleCommandLine.Run(commandLine.Command, args, (parse, cancellation) =>
{
    QuickstartSample.Run(commandLine.Settings(parse), Console.Out, cancellation);
    return 0;
});
