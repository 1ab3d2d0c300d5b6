set terminal svg size 1100,500 dynamic background rgb "white"
set datafile separator whitespace
set output "docs/evaluation/paper-volume/intensity.svg"
set title "Grid intensity and the variant the heuristic (whole-trace window) chose"
set xdata time; set timefmt "%Y-%m-%dT%H:%M"; set format x "%d %b"; set autoscale xfixmin; set autoscale xfixmax
set key outside bottom center horizontal
set ylabel "gCO2/kWh"; set y2label "variant"; set y2range [-0.5:4]
set y2tics ("resnet34" 0, "resnet50" 1, "resnet101" 2, "resnet152" 3)
plot "docs/evaluation/paper-volume/choices.dat" using 1:2 with lines lw 1 title "intensity", \
     "docs/evaluation/paper-volume/choices.dat" using 1:4 axes x1y2 with steps lw 1 title "variant (heuristic, whole-trace)"
unset xdata; unset y2tics; unset y2label; unset y2range; set format x "%g"; unset key
set output "docs/evaluation/paper-volume/efficiency.svg"
set title "Carbon-emission efficiency vs resnet50 (relative quality improvement % per extra gram)"
set style fill solid 0.6; set boxwidth 0.6; set ylabel "%/g"; set xtics rotate by -20
plot "docs/evaluation/paper-volume/efficiency.dat" using 0:2:xtic(1) with boxes notitle
