using BootMae.Samples;
using BootMae.Samples.Featurize;

var commandLine = new FeaturizeCommandLine();
return SampleCommandLine.Run(commandLine.Command, args, (parse, cancellation) =>
{
    FeaturizeSample.Run(commandLine.Settings(parse), Console.Out, cancellation);
    return 0;
});
